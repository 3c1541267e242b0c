"""Medical-Diff-VQA's vocabulary: the 30 official finding names its answers use (the list of ``docs/data.md``).

One list for everything that names a finding: the lexicon that finds them in text (:mod:`diffvqa.saliency.lexicon`),
the finding labels (:mod:`diffvqa.data.labels`) and the phantom.
"""

from __future__ import annotations

# The 30 official finding names of Medical-Diff-VQA, in the order of docs/data.md; the release's answers use only
# these.
FINDINGS: tuple[str, ...] = (
    "pleural effusion",
    "atelectasis",
    "cardiomegaly",
    "enlargement of the cardiac silhouette",
    "edema",
    "hernia",
    "vascular congestion",
    "hilar congestion",
    "pneumothorax",
    "heart failure",
    "lung opacity",
    "pneumonia",
    "tortuosity of the descending aorta",
    "scoliosis",
    "gastric distention",
    "hypoxemia",
    "hypertensive heart disease",
    "hematoma",
    "tortuosity of the thoracic aorta",
    "contusion",
    "emphysema",
    "granuloma",
    "calcification",
    "pleural thickening",
    "thymoma",
    "blunting of the costophrenic angle",
    "consolidation",
    "fracture",
    "pneumomediastinum",
    "air collection",
)
