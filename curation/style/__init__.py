"""Style: descriptors separate from content, their index, style-reference pairs and creator attribution."""
