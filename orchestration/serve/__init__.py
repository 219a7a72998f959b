"""The deletion-ready model service: predictions and deletion requests over HTTP, on Ray Serve.

    app.py       the HTTP door (Gateway deployment): endpoints, auth, input checks, predictions
    inputs.py    request bodies -> validated arrays and ids, with one-line errors
    versions.py  whole ensemble versions: the board that holds the current one, and how replicas swap
    worker.py    the deletion worker (one replica): requests in arrival order, batched, on warm shard actors
    policy.py    when a batch of deletion requests starts, from a window and the retraining cost model
    launch.py    `unlearn serve`: start or join Ray, deploy, wait, stop
"""
