"""The output side: what a check looks like (views), the pixels (render), markdown, and the writers."""
