from dropsync.cli import main

main()
