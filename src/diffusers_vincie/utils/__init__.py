"""Small helpers with no heavy imports, shared by the library, the scripts and the Space."""
