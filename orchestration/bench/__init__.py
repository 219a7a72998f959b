"""`unlearn bench`: how close each way of unlearning gets to retraining, sample by sample, and what it costs.

Read in this order:

1. `protocol.py`  the forget set of a scenario (random, class, stream, hard), the splits every model
                  is scored on (forget, retain, test, validation) and the seeds of every population.
2. `populations.py`  the jobs that make models (train an original or an oracle, delete exactly with
                  SISA, unlearn approximately), run one at a time in any process, cached by what
                  determines each model.
3. `fanout.py`    where jobs run: this process, or Ray tasks of one CPU and one torch thread.
4. `study.py`     which populations a bench needs, and `Study.method_row`: data, forget set, seeds and
                  a method in, per-example scores and their summary out.
5. `metrics.py`   pure functions on (models, samples) arrays: KLoM, U-LiRA, the challenge's forget
                  quality, and the sanity checks with their statistics.
6. `scoring.py`   one population against the oracles, like for like with the floor and the ceiling.
7. `report.py`, `plots.py`  tables and pictures; `run.py` puts it all together and logs to MLflow.
"""
