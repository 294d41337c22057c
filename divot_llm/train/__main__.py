"""``python -m divot_llm.train ...`` (also what ``deepspeed --module divot_llm.train`` runs)."""

from divot_llm.cli.train import main

if __name__ == "__main__":
    main()
