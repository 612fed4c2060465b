"""What the privacy policy promises: erasure, access export, retention."""
