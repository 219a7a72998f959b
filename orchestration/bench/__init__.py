"""`unlearn bench`: how close each way of unlearning gets to retraining, sample by sample, at what cost.

Read in this order:

1. `protocol.py`  the forget set of a scenario (random, class, stream, hard), the splits every model
                  is scored on (forget, retain, test, validation) and the seeds of every population.
2. `jobs.py`      the jobs that make models (train an original or an oracle, delete exactly with
                  SISA, unlearn approximately) and the key of what determines each model;
   `populations.py`  doing a job in any process, with the model cache on disk.
3. `fanout.py`    where jobs run: this process, or Ray tasks of one CPU and one torch thread.
4. `study.py`     which populations a bench needs, and `Study.method_row`: data, forget set, seeds and
                  a method in, per-example scores and their summary out.
5. `metrics.py`   pure functions on (models, samples) arrays: KLoM, U-LiRA, the challenge's forget
                  quality, and the sanity checks with their statistics.
6. `scoring.py`   one population against the oracles, like for like with the floor and the ceiling.
7. `report.py`, `plots.py`  tables and pictures; `run.py` puts it all together and logs to MLflow.
"""
