"""Medical records: who may read them, and where their documents are stored."""
