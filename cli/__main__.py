"""python -m cli: the gengate command line."""
from cli.main import main

main()
