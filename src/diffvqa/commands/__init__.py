"""The commands: one module per job, each with a ``main(argv)`` that ``diffvqa <command>`` (:mod:`diffvqa.cli`) runs.

:mod:`~diffvqa.commands.train`, :mod:`~diffvqa.commands.evaluate`, :mod:`~diffvqa.commands.ask`,
:mod:`~diffvqa.commands.demo` (phantom to report, end to end) and :mod:`~diffvqa.commands.study` (the ablation
grid). The commands of data preparation, keywords, the viewer and the curves live beside what they make
(:data:`diffvqa.cli.COMMANDS` says where each command lives).
"""
