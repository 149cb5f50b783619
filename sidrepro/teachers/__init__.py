"""Teachers: the paper's models behind one adapter protocol, their hub snapshots and a tiny offline zoo."""
