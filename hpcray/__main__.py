from hpcray.cli import main

main()
