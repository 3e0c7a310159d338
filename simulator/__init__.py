"""A simulated storefront and email provider: the source systems a real shop has."""
