"""The contracts: CQL (source of truth), message formats, typed records, the vector codec."""
