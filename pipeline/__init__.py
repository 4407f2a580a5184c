"""The composition layer: what several scripts share that needs ``models/`` and ``data/`` together.

``pipeline`` may import ``utils``, ``models`` and ``data``; none of those imports ``pipeline``, and
the top-level scripts import it rather than each other (``tests/test_layering.py``).

* :mod:`pipeline.search`: a run's model in front of its search index (``RunSearch``): search.py
  and GAN_test.py ``--recipe``.
* :mod:`pipeline.judge`: an independent judge run checked and loaded (``load_judge``):
  GAN_train.py and GAN_test.py ``--judge_dir``.
"""
