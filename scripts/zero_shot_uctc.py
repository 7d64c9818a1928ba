#!/usr/bin/env python
"""Zero-shot ASR: decode speech through a *pre-trained* SpeechLM's UCTC head, with no fine-tuning.

    python scripts/zero_shot_uctc.py --checkpoint exp/mini/rows/SpeechLM-P/pretrain/checkpoint_last.pt \
        --data CORPUS --subsets test,test_other --results-path exp/mini/rows/SpeechLM-P/decode_zero_shot

The UCTC head was trained only on unpaired text (phone units -> letters through the Shared
Transformer); speech reaches the same Shared Transformer through the Speech Transformer. If the two
modalities share one unit space, the text-trained head reads speech. The model is built exactly as
CTC fine-tuning builds it at update 0 (``speechlm_ctc`` with the pre-trained weights and its CTC head
initialised from the UCTC head), then decoded with the batched Viterbi decoder of ``speechlm.decoding.ctc`` (as ``speechlm infer``). Writes
``{subset}.hypo.wrd`` / ``{subset}.ref.wrd`` (``WORDS (utterance-id)`` per line, as ``speechlm infer``)
and prints the same WER/CER table.
"""
import argparse
import os
import sys

import torch


def build_zero_shot_model(checkpoint: str, task):
    """The ``speechlm_ctc`` model of ``checkpoint`` with its head taken from the UCTC head, in eval mode.

    Raises ``SystemExit`` when the checkpoint has no UCTC head (speech-only pre-training) or predicts
    other letters than ``task.target_dictionary``.
    """
    from omegaconf import OmegaConf

    from speechlm.models.pretrained import PretrainedSpec
    from speechlm.models.speechlm_ctc import SpeechLMCtc, SpeechLMCtcConfig, SpeechLMEncoder

    cfg = OmegaConf.merge(OmegaConf.structured(SpeechLMCtcConfig), {
        "w2v_path": os.path.abspath(checkpoint), "apply_mask": False, "encoder_layerdrop": 0.0,
    })
    encoder = SpeechLMEncoder(cfg)
    pre = PretrainedSpec.from_dict(cfg.pretrained_spec)
    tgt = task.target_dictionary
    letters = list(tgt.symbols)
    if encoder.uctc is None:
        raise SystemExit(f"{checkpoint}: pre-trained without text (no UCTC head): nothing to decode zero-shot")
    if pre.num_letters != len(tgt) or (pre.letters is not None and list(pre.letters) != letters):
        raise SystemExit(
            f"{checkpoint}: its UCTC head predicts {pre.num_letters} letters, {task.cfg.data}/dict.ltr.txt "
            f"has {len(tgt)} (or other symbols); decode with the letter dictionary used in pre-training"
        )
    model = SpeechLMCtc(cfg, encoder, len(tgt), letters)
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="pre-trained `speechlm` checkpoint with a UCTC head")
    p.add_argument("--data", required=True, help="directory with SUBSET.tsv, SUBSET.ltr and dict.ltr.txt")
    p.add_argument("--subsets", default="test,test_other")
    p.add_argument("--results-path", required=True, help="where {subset}.hypo.wrd / .ref.wrd go")
    p.add_argument("--max-tokens", type=int, default=1_600_000, help="samples per batch")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    args = p.parse_args(argv)

    import speechlm  # noqa: F401  (registers the task and models)
    from speechlm.decoding.ctc import ViterbiDecoder, decode_dataset, error_rates
    from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingConfig, SpeechLMPretrainingTask

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    task_cfg = SpeechLMPretrainingConfig(data=args.data, fine_tuning=True, max_sample_size=None,
                                         min_sample_size=0, seed=1)
    task = SpeechLMPretrainingTask.setup_task(task_cfg)
    model = build_zero_shot_model(args.checkpoint, task)
    use_cuda = torch.cuda.is_available() and not args.cpu
    if use_cuda:
        model = model.cuda()
    tgt = task.target_dictionary
    decoder = ViterbiDecoder(tgt, tgt.bos(), "letter")
    os.makedirs(args.results_path, exist_ok=True)
    print(f"{'subset':<14}{'utts':>7}{'words':>8}{'WER%':>8}{'CER%':>8}")
    for subset in args.subsets.split(","):
        task.load_dataset(subset)
        ds = task.dataset(subset)
        results = decode_dataset(model, ds, [decoder], tgt, "letter", args.max_tokens, use_cuda=use_cuda)[0][0]
        ids = [os.path.splitext(n)[0] for n in ds.names]
        for kind, k in (("hypo", 0), ("ref", 1)):
            with open(os.path.join(args.results_path, f"{subset}.{kind}.wrd"), "w", encoding="utf-8") as f:
                for sid in sorted(results):
                    f.write(f"{results[sid][k] or ''} ({ids[sid]})\n")
        e = error_rates(results)
        print(f"{subset:<14}{len(results):>7}{e['words']:>8}{e['wer']:>8.2f}{e['cer']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
