"""Print the directory to pass to fairseq as ``common.user_dir=`` / ``--user-dir``."""
import os


def add_args(parser):
    pass


def run(args):
    print(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
