"""What the app shows, computed: spectra, outliers, error splits, ViT attention and attributions."""
