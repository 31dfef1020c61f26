from faber_core.cli import main

main()
