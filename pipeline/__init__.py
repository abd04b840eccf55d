"""fuzzy-people: hide every person in street imagery at archive scale."""

__version__ = "0.1.0"
