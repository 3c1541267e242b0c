"""The evaluation viewer: every answer and saliency map of an evaluation, browsable from ``file://``.

``strips.py`` renders one picture strip per question while ``evaluate`` runs; ``build.py`` writes the page and its
data (``diffvqa view``); ``static/`` holds the page's own HTML, JavaScript and CSS.
"""
