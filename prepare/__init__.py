"""``floraedge prepare``: the raw Oxford-102 release to a validated, labelled, cached dataset."""
