"""Team mode: several machines, one account, one journal on PostgreSQL.

- `database`: the journal's PostgreSQL backend (schema, transactions, chain leases).
- `slots`: the account's concurrency limit counted in the database, shared by every worker.
- `queue`: chains submitted for any worker to take (`chainer submit`).
- `worker`: the loop of `chainer worker`: take chains, run them on the one run path.

Kept free of imports here: the journal imports `database` alone.
"""
