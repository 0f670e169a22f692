from alexc_launch import main

main()
