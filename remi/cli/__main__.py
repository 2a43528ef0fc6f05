"""``python -m remi.cli`` (also how ``--nproc`` re-runs ``remi train`` under torchrun)."""

from remi.cli import main

if __name__ == "__main__":
    main()
