"""campaign: an email engagement-campaign engine for merchant webstores."""

__version__ = "0.1.0"
