"""One TPT run of the reference code (azshue/TPT) for ``vs_reference.py``, in its own process.

Run by ``vs_reference.py`` with the reference's Python environment (see ``benchmarks/README.md``); it imports the
user's checkout of azshue/TPT from ``--tpt-dir`` and ships none of it. It runs the reference's own
``tpt_classification.main_worker`` (CoOp context from "a photo of a", 64 views, confidence selection 0.1, one
AdamW step at lr 5e-3, as ``scripts/test_tpt.sh``) on one test set and writes one JSON object of measurements to
``--out``. Changes at run time, all outside the measured code unless said:

- ``clip.load`` builds the model with the reference's own ``clip.build_model`` from the ``--weights`` safetensors
  file and casts it to fp32 on the CPU, as its own ``load`` does there (the original downloads a TorchScript
  archive and unpickles it);
- the device is ``cpu``: ``main_worker`` gets ``gpu="cpu"`` (the model, the tokenised prompts) and
  ``Tensor.cuda`` returns the tensor itself (the test loop moves every batch with it); ``torch.cuda.amp``'s
  autocast and ``GradScaler`` disable themselves without CUDA, so the run is fp32 like vlprompt's;
- ``--classes N``: ImageNet's class list is cut to its first N names (the data folder then holds N classes);
- the fine-grained sets' split file is read from ``--split-file`` (the reference reads
  ``data/data_splits/<file>`` relative to its working folder);
- the test loader stops after ``--images`` images (``DataLoader`` wrapped by ``itertools.islice``; loading, the
  views (AugMix included), tuning and prediction of those images are timed as the reference runs them);
- ``select_confident_samples`` is wrapped to record the selected view indices of each image, and the first image's
  views (normalised, as the model receives them) are written to ``--views-out`` so that the parent can check
  vlprompt's selection on identical views.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tpt-dir", required=True, help="checkout of azshue/TPT")
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True, help="data root in the reference's layout (ImageNet/val, eurosat/...)")
    p.add_argument("--test-set", required=True, help="the reference's set id: I (1000 classes) or eurosat (10)")
    p.add_argument("--split-file", default=None, help="split file of a fine-grained set")
    p.add_argument("--classes", type=int, default=None, help="ImageNet (I): the first N of its class names only")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--views-out", default=None, help="safetensors file for the first image's views")
    a = p.parse_args()

    sys.path.insert(0, a.tpt_dir)
    os.chdir(a.tpt_dir)
    import torch  # deferred: the reference environment's torch
    from safetensors.torch import load_file, save_file  # deferred: idem

    import clip.clip as ref_clip_module  # deferred: the reference checkout is on sys.path only now
    import clip.custom_clip as ref_custom_clip  # deferred: idem
    import data.fewshot_datasets as ref_fewshot  # deferred: idem
    import tpt_classification as ref  # deferred: idem

    def load_from_weights(name, device="cpu", jit=False, download_root=None):
        model = ref_clip_module.build_model(load_file(a.weights)).to(device)
        if str(device) == "cpu":
            model.float()
        return model, model.text_projection.shape[1], ref_clip_module._transform(model.visual.input_resolution)

    ref_custom_clip.load = load_from_weights
    if a.classes:  # both modules read their own reference to the list
        ref.imagenet_classes = ref_custom_clip.imagenet_classes = ref.imagenet_classes[: a.classes]
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    if a.split_file:
        for key in list(ref_fewshot.path_dict):
            ref_fewshot.path_dict[key] = [ref_fewshot.path_dict[key][0], a.split_file]

    stats: dict = {"image_seconds": [], "image_cpu_seconds": [], "selected": []}
    loader_cls = ref.torch.utils.data.DataLoader

    class TimedLoader:
        """The reference's loader, cut to ``--images`` images, stamping the time at which each image is asked for."""

        def __init__(self, *args, **kwargs):
            self.loader = loader_cls(*args, **kwargs)

        def __len__(self):
            return min(a.images, len(self.loader))

        def __iter__(self):
            last, last_cpu = time.perf_counter(), time.process_time()
            for i, batch in enumerate(itertools.islice(iter(self.loader), a.images)):
                if i == 0 and a.views_out:
                    views = torch.cat(batch[0], dim=0) if isinstance(batch[0], list) else batch[0]
                    save_file({"views": views.contiguous()}, a.views_out)
                    last, last_cpu = time.perf_counter(), time.process_time()  # the write is not the reference's work
                yield batch
                now, now_cpu = time.perf_counter(), time.process_time()
                stats["image_seconds"].append(now - last)
                stats["image_cpu_seconds"].append(now_cpu - last_cpu)
                last, last_cpu = now, now_cpu

    ref.torch.utils.data.DataLoader = TimedLoader
    select = ref.select_confident_samples

    def recorded_select(logits, top):
        out, idx = select(logits, top)
        stats["selected"].append(sorted(int(i) for i in idx))
        return out, idx

    ref.select_confident_samples = recorded_select
    # the reference builds its parser under ``if __name__ == '__main__'``: the same arguments as
    # scripts/test_tpt.sh passes them (``-a ViT-B/16 -b 64 --tpt --ctx_init a_photo_of_a``), the rest its defaults
    args = argparse.Namespace(
        data=a.data, test_sets=a.test_set, dataset_mode="test", arch="ViT-B/16", resolution=224, workers=0,
        batch_size=64, lr=5e-3, print_freq=10**9, gpu="cpu", tpt=True, selection_p=0.1, tta_steps=1, n_ctx=4,
        ctx_init="a_photo_of_a", cocoop=False, load=None, seed=a.seed,
    )
    c0, t0 = time.process_time(), time.perf_counter()
    ref.main_worker("cpu", args)
    stats.update(total_s=time.perf_counter() - t0, total_cpu_s=time.process_time() - c0,
                 images=len(stats["image_seconds"]), peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                 threads=torch.get_num_threads(), torch=torch.__version__)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(stats, f)


if __name__ == "__main__":
    main()
