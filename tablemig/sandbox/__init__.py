"""The embedded sandbox: a throwaway primary and standby on loopback, with demo data."""
