"""Batch extraction: the shop's database and the email provider's export into raw.*."""
