"""Camera-motion estimation and classification (docs/design.md 2.5)."""
