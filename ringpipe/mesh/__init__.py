"""How the workers of one server share pipes: the control links between them, the per-worker
``WorkerPipes`` (local parties, and the owner side of the paths that hash to this worker),
connection hand-off to a path's owner, and the relay's producer and consumer ends over a ring.
"""
