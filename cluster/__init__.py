"""Running at scale on Ray: bulk offline tagging with Ray Data (``cluster.bulk``).

Importing this package imports nothing of Ray; ``cluster.bulk`` imports Ray only when a job runs, so the
CLI loads it lazily inside the ``tag`` verb.
"""
