"""``assure``: run AssureAgent scenarios from CI with only the product's URL and an API token."""

__version__ = "0.1.0"
