"""The pytest plugin: options, the site fixtures, plan modules' step semantics, xdist ordering."""
