"""Camera-motion estimation and classification (DESIGN.md 2.5)."""
