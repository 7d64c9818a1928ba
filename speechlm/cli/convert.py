"""`speechlm convert SRC DST`: a released SpeechLM checkpoint (published code's layout) -> this plugin's.

    speechlm convert speechlmp_base_checkpoint_298_400000.pt exp/slm_p_base.pt \\
        --dict-ltr dict.ltr.txt --dict-phn dict.phn.txt          # pre-trained SpeechLM-P (H: --dict-km)
    speechlm convert speechlmp_base_100h_ft.pt exp/slm_p_base_100h.pt --dict-ltr dict.ltr.txt   # ASR
    speechlm convert speechlmp_base_covost_ende.pt exp/st_ende.pt --dict-st spm_char_st_en_de.txt  # ST
    speechlm convert speechlmp_large_checkpoint_clean.pt exp/slm_p_large.pt   # released cleaned (features)

The layout (pre-trained, released cleaned, ASR or ST fine-tune) is detected from the file; see
``speechlm.convert``.
"""
import logging
import sys


def add_args(parser):
    parser.add_argument("src", help="checkpoint written by the published SpeechLM code (microsoft/unilm)")
    parser.add_argument("dst", help="where to write the converted checkpoint")
    parser.add_argument("--dict-ltr", help="letter dictionary (dict.ltr.txt) of the UCTC / CTC head")
    parser.add_argument("--dict-phn", help="phone-unit dictionary (dict.phn.txt) of a SpeechLM-P model")
    parser.add_argument("--dict-km", help="hidden-unit dictionary (dict.km.txt) of a SpeechLM-H model")
    parser.add_argument("--dict-st", help="target vocabulary of an ST model (spm_char_st_en_*.txt)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists (never SRC itself)")
    parser.add_argument("--layout", choices=["pretrained", "cleaned", "asr", "st"],
                        help="refuse unless the file has this layout (default: detect it)")


def run(args):
    import speechlm  # noqa: F401  (registers models; safe checkpoint loading)
    from speechlm.convert import convert

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s | %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    if args.dict_phn and args.dict_km:
        sys.exit("speechlm convert: give --dict-phn (SpeechLM-P) or --dict-km (SpeechLM-H), not both")
    # ConvertError (a UserError) and OSErrors are printed by speechlm.cli.main, without a traceback
    report = {}
    layout = convert(args.src, args.dst, dict_ltr=args.dict_ltr, dict_phn=args.dict_phn, dict_km=args.dict_km,
                     dict_st=args.dict_st, layout=args.layout, overwrite=args.overwrite, report=report)
    print(f"{args.src}: {layout} checkpoint -> {args.dst} (verified: this plugin's model loads it strictly)")
    if layout == "cleaned":
        from speechlm.convert import cleaned_report

        print(cleaned_report(report))
    return 0
