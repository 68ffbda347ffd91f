"""``python -m hf_egt``: the ``hf-egt`` command line."""

from hf_egt.apps.cli import console_main

if __name__ == "__main__":
    console_main()
