"""What several panels use: the thumbnail loader, the plain words for jobs and runs, and showing
a file in the system file manager."""
