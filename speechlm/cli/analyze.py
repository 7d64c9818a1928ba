"""`speechlm analyze shared-space`: where speech meets text in a pre-trained SpeechLM, layer by layer.

    speechlm analyze shared-space CHECKPOINT CORPUS [--split valid] [--out DIR]
        [--units-dir DIR --label km]   # the text side's units (default: CORPUS/SPLIT.phn, the true phones)
        [--random-init --seed S]       # the checkpoint's architecture with fresh weights
        [--frames-per-utt 100] [--max-utts N] [--tsne-points 500] [--no-plot]

For every utterance of SPLIT, its speech (through the Speech Transformer) and its frame-level units at
their true durations (through the unit embedding) go through the Shared Transformer; per layer, from its
input (layer 0) to its top: the % of speech frames whose nearest text frame carries the same true phone
(and chance), the same within each view, the cosine of the mean vectors, linear CKA of the time-paired
frames and the norm ratio (``speechlm.analysis.shared_space``). Writes ``OUT/shared_space.json`` (a list,
one object per layer), ``OUT/shared_space.png`` (t-SNE per layer, speech and text coloured apart) and
``OUT/cross_reading.json`` (each pre-training head on each view at the top: does the UMLM head, trained on
speech, read text, and the UCTC head, trained on text, read speech; ``cross_reading`` in the module);
OUT defaults to ``shared_space/`` next to the checkpoint.
"""
import os
import time


def add_args(parser):
    sub = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    p = sub.add_parser("shared-space", help="speech vs text frames in each Shared Transformer layer")
    p.add_argument("checkpoint", help="pre-trained `speechlm` checkpoint")
    p.add_argument("corpus", help="corpus dir with SPLIT.tsv and SPLIT.phn (true 50 Hz phones)")
    p.add_argument("--split", default="valid")
    p.add_argument("--out", help="output dir (default: shared_space/ next to the checkpoint)")
    p.add_argument("--units-dir", help="dir with SPLIT.LABEL and dict.LABEL.txt: the units the model reads "
                                       "(default: CORPUS, its true phones)")
    p.add_argument("--label", default="phn", help="unit label extension (phn, km; default phn)")
    p.add_argument("--random-init", action="store_true",
                   help="the checkpoint's architecture with fresh weights (torch.manual_seed(--seed))")
    p.add_argument("--seed", type=int, default=1, help="frame subsampling, t-SNE and --random-init")
    p.add_argument("--frames-per-utt", type=int, default=100, help="frames kept per utterance")
    p.add_argument("--max-utts", type=int, help="first N utterances of the split only")
    p.add_argument("--tsne-points", type=int, default=500, help="frames per view in each t-SNE panel")
    p.add_argument("--no-plot", action="store_true", help="numbers only, no t-SNE figure")
    p.add_argument("--no-letters", action="store_true",
                   help="no UCTC letter error (SPLIT.ltr not needed); the heads' table keeps the UMLM figures")


def run(args):
    import torch

    from speechlm.analysis import shared_space
    from speechlm.data.readers import load_dictionary
    from speechlm.errors import UserError

    if args.frames_per_utt < 1 or args.tsne_points < 2:
        raise UserError("--frames-per-utt must be >= 1 and --tsne-points >= 2")
    t0 = time.process_time()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, normalize = shared_space.load_model(args.checkpoint, args.random_init, args.seed)
    dict_path = os.path.join(args.units_dir or args.corpus, f"dict.{args.label}.txt")
    units = load_dictionary(dict_path, "unit")
    if len(units) != model.num_units:
        raise UserError(f"{dict_path}: {len(units)} symbols, but {args.checkpoint} has {model.num_units} unit "
                        "embeddings; give --units-dir/--label of the units it was pre-trained on")
    data = shared_space.load_data(args.corpus, args.split, units, args.units_dir, args.label, args.max_utts)
    stats, (speech, text, _, _) = shared_space.analyze(model, data, args.frames_per_utt, args.seed, normalize)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "shared_space")
    shared_space.write_json(shared_space.stats_json(stats), os.path.join(out, "shared_space.json"))
    tail = os.path.normpath(os.path.abspath(args.checkpoint)).split(os.sep)[-3:]  # e.g. RUN/pretrain/checkpoint_last.pt
    what = f"{'/'.join(tail)}{' (random init)' if args.random_init else ''}"
    print(f"{what} on {args.corpus}/{args.split}: {len(data.utterances)} utterances, {stats[0].frames} "
          f"frames per view; neighbours from other utterances")
    print(shared_space.format_table(stats))
    letters, blank = None, 0
    if not args.no_letters and model.uctc_head is not None:
        ltr_path = os.path.join(args.corpus, "dict.ltr.txt")
        letter_dict = load_dictionary(ltr_path, "letter")
        if len(letter_dict) != model.num_letters:
            raise UserError(f"{ltr_path}: {len(letter_dict)} symbols, but {args.checkpoint}'s UCTC head predicts "
                            f"{model.num_letters} letters; give the corpus it was pre-trained with, or --no-letters")
        letters, blank = shared_space.read_letters(args.corpus, args.split, letter_dict, len(data.utterances)), \
            letter_dict.bos()
    heads = shared_space.cross_reading(model, data, letters, blank, normalize)
    shared_space.write_json(heads, os.path.join(out, "cross_reading.json"))
    print(shared_space.format_cross_reading(heads))
    if not args.no_plot:
        shared_space.plot_tsne(speech, text, stats, os.path.join(out, "shared_space.png"), args.tsne_points, args.seed,
                    title=f"{what}: speech vs text frames ({args.split})")
    print(f"written: {out}/shared_space.json, cross_reading.json{'' if args.no_plot else ', shared_space.png'} "
          f"({time.process_time() - t0:.1f} CPU s)")
    return 0
