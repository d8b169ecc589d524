-- pgbench script used by `bench/bench.py --workload` (see its docstring).
-- An application writing to public.orders: 70 % INSERT of a new order dated now(),
-- 30 % UPDATE of a recent order, picked uniformly among the `span` newest ids
-- (`maxid` = max(id) before the run; both passed with -D by bench.py).
\set r random(1, 100)
\set cust random(1, 100000)
\set cents random(100, 50000)
\if :r <= 70
INSERT INTO orders (customer_id, status, amount, created_date, note) VALUES (:cust, 'new', :cents / 100.0, now(), NULL);
\else
\set id random(:maxid - :span + 1, :maxid)
UPDATE orders SET status = 'paid', amount = :cents / 100.0, updated_at = now() WHERE id = :id;
\endif
