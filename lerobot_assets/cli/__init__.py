"""The lerobot-assets command line and the demo."""
