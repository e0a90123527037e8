from neko.cli import main

main()
