"""`unlearn bench`: how close each way of unlearning gets to retraining, sample by sample, at what cost;
`unlearn tune`: each method's hyperparameters searched against retraining, apart from what the bench reports.

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

`unlearn tune` builds on it:

8. `tuning.py`    the tuner's protocol beside the bench's (its own forget set, the validation split,
                  its own seeds), the objective, and one trial: a configuration in, scores out.
9. `search.py`    one method's search on Ray Tune (trials of one CPU, retried, streamed back).
10. `tuned.py`    tuned configurations on disk, and `bench --tuned` reading them.
11. `tune.py`     it all together: populations, a search per method, tuned files, MLflow.
"""
