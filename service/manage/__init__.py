"""The person's own side: the manage page, its fresh single-use links, changing one's address, unsubscribing."""
