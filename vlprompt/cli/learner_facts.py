"""What ``vlprompt list learners`` says about each built-in learner without importing it (no torch).

:data:`LEARNER_FACTS` holds, per entry-point name, the learner's family and tasks (the class attributes
``family`` and ``tasks``; a test-time learner's task is ``test-time``), the paper it reproduces, the test
module that pins it to the reference code, if one does, and its resource track. ``tests/test_cli_startup.py`` keeps the family, tasks
and test files in sync with the real classes and the test suite. A third-party learner is not listed here: its
``family`` and ``tasks`` are read from its source file (:mod:`ast`, no import) where they are plain literals.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["LearnerFacts", "LEARNER_FACTS"]


class LearnerFacts(NamedTuple):
    """Static facts about one learner: ``family``, ``tasks``, ``paper``, ``faithfulness`` (a test module path,
    or ``""`` when no test compares it with reference code) and ``track``: the resource track it runs on (what it
    uses beyond the protocol's labelled images and the frozen backbone, the words of
    :data:`vlprompt.learners.base.RESOURCES`; ``standard`` for nothing; ``A / B`` where a config option decides, e.g.
    ``standard / LLM text`` for a learner that reads LLM descriptions when given a file)."""

    family: str
    tasks: tuple[str, ...]
    paper: str
    faithfulness: str = ""
    track: str = "standard"


_CS = ("classification", "segmentation")

LEARNER_FACTS: dict[str, LearnerFacts] = {
    "zero_shot": LearnerFacts("text", _CS, "CLIP (Radford et al., ICML 2021)", track="standard / LLM text"),
    "coop": LearnerFacts("text", _CS, "CoOp (Zhou et al., IJCV 2022)", "tests/test_tunevlseg_equivalence.py"),
    "cocoop": LearnerFacts("text", _CS, "CoCoOp (Zhou et al., CVPR 2022)", "tests/test_faithfulness_cocoop.py"),
    "vpt": LearnerFacts("visual", _CS, "VPT (Jia et al., ECCV 2022)", "tests/test_vl_reference.py"),
    "ivlp": LearnerFacts("multimodal", _CS, "IVLP (Khattak et al., CVPR 2023)", "tests/test_vl_reference.py"),
    "maple": LearnerFacts("multimodal", _CS, "MaPLe (Khattak et al., CVPR 2023)", "tests/test_vl_reference.py"),
    "promptsrc": LearnerFacts("multimodal", _CS, "PromptSRC (Khattak et al., ICCV 2023)", "tests/test_vl_reference.py"),
    "dept": LearnerFacts("text", _CS, "DePT (Shi & Lipani, ICLR 2024)"),
    "ept": LearnerFacts("text", _CS, "EPT (Lan et al., arXiv 2405.11464)"),
    "cones": LearnerFacts("text", ("classification",), "ConES (Yi et al., arXiv 2305.18993)"),
    "cones_stage2": LearnerFacts("text", ("classification",), "ConES, stage 2 (Yi et al., arXiv 2305.18993)"),
    "tmml": LearnerFacts("multimodal", _CS, "TMML (Long et al., ICCV 2023)"),
    "tpt": LearnerFacts("test-time", ("test-time",), "TPT (Shu et al., NeurIPS 2022)", "tests/test_tta.py", "test image"),
    "difftpt": LearnerFacts("test-time", ("test-time",), "DiffTPT (Feng et al., ICCV 2023)", "tests/test_tta.py", "test image"),
    "ctpt": LearnerFacts("test-time", ("test-time",), "C-TPT (Yoon et al., ICLR 2024)", "tests/test_tta_methods.py", "test image"),
    "zero": LearnerFacts("test-time", ("test-time",), "ZERO (Farina et al., NeurIPS 2024)", "tests/test_tta_methods.py", "test image"),
    "tda": LearnerFacts("test-time", ("test-time",), "TDA (Karmanov et al., CVPR 2024)", "tests/test_tta_methods.py", "test image, earlier test images"),
    "gram": LearnerFacts("meta-learned", ("classification",), "GRAM (Li et al., ICCV 2023)",
                         track="the inner learner's + image-text corpus"),
    "shared_separate": LearnerFacts("multimodal", _CS, "TuneVLSeg Shared Separate (Adhikari et al., ACCV 2024)",
                                   "tests/test_shared_learners.py"),
    "shared_attention": LearnerFacts("multimodal", _CS, "TuneVLSeg Shared Attention (Adhikari et al., ACCV 2024)",
                                    "tests/test_shared_learners.py"),
    "linear_probe": LearnerFacts("baseline", ("classification",), "linear probe (Radford et al., ICML 2021; CLIP_benchmark)",
                                 "tests/test_linear_probe.py"),
    "clip_lora": LearnerFacts("multimodal", ("classification",), "CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024)",
                              "tests/test_clip_lora.py"),
    "tcp": LearnerFacts("text", ("classification",), "TCP (Yao, Zhang & Xu, CVPR 2024)", "tests/test_tcp_equivalence.py"),
    "mma": LearnerFacts("multimodal", ("classification",), "MMA (Yang et al., CVPR 2024)", "tests/test_mma_equivalence.py"),
    "coprompt": LearnerFacts("multimodal", ("classification",), "CoPrompt (Roy & Etemad, ICLR 2024)",
                             "tests/test_coprompt_equivalence.py", "LLM text / standard"),
    "mmrl": LearnerFacts("multimodal", ("classification",), "MMRL (Guo & Gu, CVPR 2025)", "tests/test_mmrl_equivalence.py"),
    "promptkd": LearnerFacts("multimodal", _CS, "PromptKD (Li et al., CVPR 2024)", "tests/test_promptkd_equivalence.py",
                             "teacher model, unlabeled images"),
    "dpc": LearnerFacts("text", ("classification",), "DPC (Li et al., CVPR 2025), a plug-in on any learner",
                        "tests/test_dpc_equivalence.py", "the wrapped learner's"),
    "dept_head": LearnerFacts("text", ("classification",), "DePT decoupled head (Zhang et al., CVPR 2024), a plug-in on any learner",
                              "tests/test_dept_head_equivalence.py", "the wrapped learner's"),
}
