"""Order books: exact fixed-point L2 books, immutable snapshots, the registry, NBBO."""
