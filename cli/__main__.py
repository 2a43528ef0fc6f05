"""``python -m cli`` (also how ``--nproc`` re-runs ``remi train`` under torchrun)."""

from cli import main

if __name__ == "__main__":
    main()
