from faber_core.command import main

main()
