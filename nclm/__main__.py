"""`python -m nclm ...` runs the command line (what launchers on every host call)."""

from nclm.cli import main

if __name__ == "__main__":
    main()
