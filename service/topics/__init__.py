"""Topics: the lists a person subscribes to, who is in which, and each topic's welcome."""
