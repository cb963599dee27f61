"""The queue panel: the jobs of this session, live, with cancel, retry and resolve."""
