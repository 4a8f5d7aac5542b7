"""stemforge's command-line apps, installed as console scripts and wrapped by the thin ``scripts/*.py``.

============================  ==========================================  =====================================
console script                module                                      does
============================  ==========================================  =====================================
``stemforge-simulate``        :mod:`stemforge.cli.simulate`               labelled datasets and synthetic scans
``stemforge-train``           :mod:`stemforge.cli.train`                  Lightning training from Hydra configs
``stemforge-publish``         :mod:`stemforge.cli.publish`                a checkpoint into a registry store
``stemforge-analyze``         :mod:`stemforge.cli.analyze`                classical and ML analysis of a scan
``stemforge-pipeline``        :mod:`stemforge.cli.pipeline`               the main job (``make run``)
``stemforge-registry``        :mod:`stemforge.registry.cli`               list, pull, push, aliases
============================  ==========================================  =====================================

The Hydra apps read their configs from the installed :mod:`stemforge.conf`; ``--config-dir PATH`` adds a folder of
your own (its groups and primary configs are found beside the shipped ones).
"""
