"""python -m cli: the gengate command line."""
from cli import main

main()
